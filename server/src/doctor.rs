//! `sealpost doctor`: checks an install and says what to fix: the configuration, the keys and
//! their modes, the certificate and its expiry, the DNS records against what is published,
//! the listeners' ports, disk space and the clock. Each finding is `ok`, `warn` or `FAIL`
//! with the fix; the exit status is 1 when anything fails. It reads files only, and the store
//! only through a running server or, without one, opened read-write for the DNS records.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use crate::config::Loaded;
use crate::now_ms;

/// Free space below this is a failure, in bytes (1 GiB).
pub(crate) const DISK_FREE_BYTES_MIN: u64 = 1024 * 1024 * 1024;
/// Free space below this share of the disk is a warning (10%).
pub(crate) const DISK_FREE_SHARE_WARN: f64 = 0.10;
/// A clock before this is surely wrong, in ms since the epoch (November 2023).
const CLOCK_PLAUSIBLE_MS_MIN: i64 = 1_700_000_000_000;
/// A certificate closer to its end than this is a warning, in days.
pub(crate) const CERTIFICATE_DAYS_WARN: i64 = 21;
/// How long a port check waits for a connection, in ms.
const CONNECT_TIMEOUT_MS: u64 = 2_000;

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Level {
    Ok,
    Warn,
    Fail,
}

struct Findings {
    lines: Vec<(Level, String)>,
}

impl Findings {
    fn say(&mut self, level: Level, text: impl Into<String>) {
        self.lines.push((level, text.into()));
    }
}

fn mode_of(path: &Path) -> Option<u32> {
    std::fs::metadata(path)
        .ok()
        .map(|m| m.permissions().mode() & 0o777)
}

pub(crate) fn run(data: &Path) -> anyhow::Result<ExitCode> {
    let mut f = Findings { lines: Vec::new() };
    check(data, &mut f);
    let worst = f.lines.iter().map(|(l, _)| *l).max().unwrap_or(Level::Ok);
    for (level, text) in &f.lines {
        let tag = match level {
            Level::Ok => "ok  ",
            Level::Warn => "warn",
            Level::Fail => "FAIL",
        };
        println!("{tag}  {text}");
    }
    let (fails, warns) = (
        f.lines.iter().filter(|(l, _)| *l == Level::Fail).count(),
        f.lines.iter().filter(|(l, _)| *l == Level::Warn).count(),
    );
    println!("{fails} to fix, {warns} to look at");
    Ok(if worst == Level::Fail {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn check(data: &Path, f: &mut Findings) {
    let loaded = match Loaded::from_data_dir(data) {
        Ok(loaded) => {
            f.say(
                Level::Ok,
                format!("configuration {} reads and checks", loaded.file.display()),
            );
            loaded
        }
        Err(error) => {
            f.say(
                Level::Fail,
                format!("configuration: {error:#}; fix: correct the file (sealpost init writes a valid one)"),
            );
            return;
        }
    };
    let cfg = &loaded.config;
    match mode_of(data) {
        Some(mode) if mode & 0o007 != 0 => f.say(
            Level::Fail,
            format!(
                "data folder {} is open to every user (mode {mode:o}); fix: chmod o-rwx {}",
                data.display(),
                data.display()
            ),
        ),
        Some(_) => f.say(
            Level::Ok,
            format!("data folder {} is closed to other users", data.display()),
        ),
        None => f.say(
            Level::Fail,
            format!("data folder {} cannot be read", data.display()),
        ),
    }
    // Keys.
    let master = loaded.master_key_path();
    match mode_of(&master) {
        None => f.say(
            Level::Fail,
            format!(
                "master key {} is missing; fix: restore it from its offline copy (without it the store is lost)",
                master.display()
            ),
        ),
        Some(mode) if mode & 0o077 != 0 => f.say(
            Level::Fail,
            format!(
                "master key {} has mode {mode:o}; fix: chmod 600 {}",
                master.display(),
                master.display()
            ),
        ),
        Some(_) => f.say(
            Level::Ok,
            format!("master key {} is private (mode 600)", master.display()),
        ),
    }
    let backup_key = master.with_file_name(crate::init::BACKUP_KEY_FILE);
    if backup_key.exists() {
        f.say(
            Level::Warn,
            format!(
                "the backup identity {} is on this machine: whoever takes the machine can read its backups; fix: copy it somewhere safe off this machine, then delete it here",
                backup_key.display()
            ),
        );
    }
    if cfg.backup.recipient.trim().is_empty() {
        f.say(Level::Warn, "[backup] recipient is empty: no scheduled backups; fix: set an age recipient (age-keygen) in sealpost.toml");
    } else if cfg.backup.interval_ms == 0 {
        f.say(
            Level::Warn,
            "[backup] interval_ms is 0: no scheduled backups",
        );
    } else {
        f.say(
            Level::Ok,
            format!(
                "backups every {} hours, {} kept",
                cfg.backup.interval_ms / 3_600_000,
                cfg.backup.keep
            ),
        );
    }
    // Certificate.
    let cert = loaded.path(&cfg.paths.tls_certificate);
    let key = loaded.path(&cfg.paths.tls_private_key);
    match crate::serve::certificate_facts(&cert) {
        None => f.say(
            Level::Fail,
            format!(
                "certificate {} does not read as PEM; fix: put the certificate chain there",
                cert.display()
            ),
        ),
        Some((names, not_after)) => {
            let days = (not_after - now_ms()) / (24 * 3600 * 1000);
            let host = cfg.server.hostname.to_lowercase();
            if not_after <= now_ms() {
                f.say(
                    Level::Fail,
                    format!(
                        "certificate {} EXPIRED on {}; fix: renew it (or turn on [acme])",
                        cert.display(),
                        crate::cli::format_ms(not_after)
                    ),
                );
            } else if days < CERTIFICATE_DAYS_WARN {
                f.say(
                    Level::Warn,
                    format!("certificate expires in {days} days; fix: renew it soon"),
                );
            } else {
                f.say(Level::Ok, format!("certificate valid for {days} more days"));
            }
            if !names.iter().any(|n| n.eq_ignore_ascii_case(&host)) {
                f.say(
                    Level::Fail,
                    format!(
                        "certificate names {} but not {host}, the host name clients use; fix: a certificate for {host}",
                        names.join(", ")
                    ),
                );
            }
        }
    }
    match mode_of(&key) {
        None => f.say(Level::Fail, format!("TLS key {} is missing", key.display())),
        Some(mode) if mode & 0o077 != 0 => f.say(
            Level::Fail,
            format!(
                "TLS key {} has mode {mode:o}; fix: chmod 600 {}",
                key.display(),
                key.display()
            ),
        ),
        Some(_) => f.say(Level::Ok, format!("TLS key {} is private", key.display())),
    }
    // Ports: reachable when the server runs, free when it does not.
    let running = crate::control::connect(data).is_some();
    f.say(
        Level::Ok,
        if running {
            "the server is running"
        } else {
            "the server is not running"
        },
    );
    for (name, port) in cfg.listeners.named() {
        let address = SocketAddr::new(cfg.server.listen_host, port);
        let target = if address.ip().is_unspecified() {
            SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), port)
        } else {
            address
        };
        if running {
            match TcpStream::connect_timeout(&target, Duration::from_millis(CONNECT_TIMEOUT_MS)) {
                Ok(_) => f.say(Level::Ok, format!("{name} answers on {address}")),
                Err(error) => f.say(
                    Level::Fail,
                    format!("{name} does not answer on {address} ({error}); fix: look at the server's log, and the firewall"),
                ),
            }
        } else {
            match TcpListener::bind(address) {
                Ok(_) => f.say(Level::Ok, format!("{name} port {address} is free")),
                Err(error) => f.say(
                    Level::Fail,
                    format!("{name} port {address} cannot be bound ({error}): another program holds it, or the port is below 1024 without CAP_NET_BIND_SERVICE"),
                ),
            }
        }
    }
    // Disk.
    match rustix::fs::statvfs(data) {
        Ok(stat) => {
            let free = stat.f_bavail.saturating_mul(stat.f_frsize);
            let total = stat.f_blocks.saturating_mul(stat.f_frsize).max(1);
            let share = free as f64 / total as f64;
            if free < DISK_FREE_BYTES_MIN {
                f.say(
                    Level::Fail,
                    format!(
                        "{} MB free on the data folder's disk; fix: free space or grow the disk",
                        free / 1_000_000
                    ),
                );
            } else if share < DISK_FREE_SHARE_WARN {
                f.say(
                    Level::Warn,
                    format!(
                        "only {:.0}% of the data folder's disk is free ({} MB)",
                        share * 100.0,
                        free / 1_000_000
                    ),
                );
            } else {
                f.say(
                    Level::Ok,
                    format!("{} GB free on the data folder's disk", free / 1_000_000_000),
                );
            }
        }
        Err(error) => f.say(Level::Warn, format!("disk space unknown: {error}")),
    }
    // Clock: TOTP codes, certificates and DKIM signatures depend on it.
    let synced = std::process::Command::new("timedatectl")
        .args(["show", "--property=NTPSynchronized", "--value"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "yes");
    match synced {
        Some(true) => f.say(Level::Ok, "the clock is synchronised (NTP)"),
        Some(false) => f.say(
            Level::Warn,
            "the clock is not synchronised; fix: enable time sync (timedatectl set-ntp true): second factors, certificates and DKIM need the right time",
        ),
        None => f.say(
            Level::Warn,
            "whether the clock is synchronised is unknown (no timedatectl answer); make sure a time service (systemd-timesyncd, chrony) runs",
        ),
    }
    if now_ms() < CLOCK_PLAUSIBLE_MS_MIN {
        f.say(
            Level::Fail,
            "the clock is set before November 2023; fix: set the time",
        );
    }
    // DNS: what the server would publish, against what DNS answers.
    dns(data, &loaded, running, f);
}

fn dns(data: &Path, loaded: &Loaded, running: bool, f: &mut Findings) {
    let findings = if running {
        // The store is the server's: it runs the DNS check (`sealpost health`).
        let data_arg = data.to_string_lossy().to_string();
        match crate::control::run_in_server(data, &["health", "--data", &data_arg]) {
            Ok((0, out)) => {
                for line in String::from_utf8_lossy(&out).lines() {
                    let Some(rest) = line.strip_prefix("dns ") else {
                        continue;
                    };
                    let (record, state) = rest.split_once(": ").unwrap_or((rest, ""));
                    if state == "published" {
                        f.say(Level::Ok, format!("DNS {record} is published"));
                    } else {
                        f.say(
                            Level::Warn,
                            format!("DNS {record} {state}; fix: publish `sealpost dns records`"),
                        );
                    }
                }
            }
            Ok((code, _)) => f.say(
                Level::Warn,
                format!("the server's health check ended with {code}"),
            ),
            Err(error) => f.say(
                Level::Warn,
                format!("the server's health check did not run: {error:#}"),
            ),
        }
        return;
    } else {
        match crate::key::open_store(data) {
            Ok((_, store)) => crate::serve::health_facts(loaded, &store, None)
                .ok()
                .and_then(|facts| {
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .ok()?;
                    Some(runtime.block_on((facts.dns_check)()))
                }),
            Err(error) => {
                f.say(Level::Fail, format!("the store does not open: {error:#}"));
                return;
            }
        }
    };
    let Some(findings) = findings else {
        f.say(
            Level::Ok,
            "DNS records: see `sealpost health` (the running server checks them)",
        );
        return;
    };
    for finding in findings {
        match finding.state {
            Ok(true) => f.say(Level::Ok, format!("DNS {} is published", finding.record)),
            Ok(false) => f.say(
                Level::Warn,
                format!(
                    "DNS {} answers {}, expected {}; fix: publish `sealpost dns records`",
                    finding.record, finding.answer, finding.expected
                ),
            ),
            Err(why) => f.say(
                Level::Warn,
                format!(
                    "DNS {} is missing ({why}); fix: publish `sealpost dns records`",
                    finding.record
                ),
            ),
        }
    }
}
