//! `sealpost.toml`: what it holds, its defaults, and errors that name the file and the key.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

/// The file name of the configuration inside the data folder.
pub(crate) const CONFIG_FILE: &str = "sealpost.toml";

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Config {
    pub(crate) server: ServerSection,
    #[serde(default)]
    pub(crate) paths: PathsSection,
    pub(crate) listeners: ListenersSection,
    #[serde(default)]
    pub(crate) limits: LimitsSection,
    /// Extra addresses: `"team@clinic.example" = ["alice@clinic.example", "bob@clinic.example"]`
    /// delivers to both, and both may send as it.
    #[serde(default)]
    pub(crate) aliases: std::collections::BTreeMap<String, Vec<String>>,
    /// IMAP sessions and their listeners' bounds.
    #[serde(default)]
    pub(crate) imap: sealpost_imap::ImapConfig,
    /// SMTP sessions, inbound checks and their listeners' bounds.
    #[serde(default)]
    pub(crate) smtp: sealpost_smtp::SmtpConfig,
    /// Delivery to other servers and the pickup portal's notices.
    #[serde(default)]
    pub(crate) outbound: sealpost_smtp::OutboundConfig,
    /// Sign-in settings (version 0 of the policy's): who must show what (a second factor for
    /// everyone, then mail clients use app passwords; passkeys for staff), how long web
    /// sessions last, and when failures lock a client out.
    #[serde(default)]
    pub(crate) auth: sealpost_auth::SignInSettings,
    #[serde(default)]
    pub(crate) web: WebSection,
    /// Admin rules per domain or address, content rules, barred accounts, retention rules:
    /// version 0 of the policy. Its sign-in and portal settings come from `[auth]` and
    /// `[outbound]` here (so they are not written under `[policy]`).
    #[serde(default, serialize_with = "without_console_settings")]
    pub(crate) policy: sealpost_policy::PolicyConfig,
    #[serde(default)]
    pub(crate) backup: BackupSection,
    #[serde(default)]
    pub(crate) retention: RetentionSection,
    #[serde(default)]
    pub(crate) acme: crate::acme::AcmeSection,
    /// Inbound scoring by rspamd, quarantine and impersonation warnings.
    #[serde(default)]
    pub(crate) spam: sealpost_smtp::spam::SpamConfig,
}

impl Config {
    /// What browsers see: `https://HOST`, with the HTTPS port when it is not 443.
    pub(crate) fn origin(&self) -> String {
        match self.listeners.https {
            443 => format!("https://{}", self.server.hostname),
            port => format!("https://{}:{port}", self.server.hostname),
        }
    }

    /// The organisation pages and notices name: `[outbound] organisation`, else the domain.
    pub(crate) fn organisation(&self) -> String {
        if self.outbound.organisation.is_empty() {
            self.server.domain.clone()
        } else {
            self.outbound.organisation.clone()
        }
    }

    /// The address notices come from.
    pub(crate) fn postmaster(&self) -> String {
        format!("postmaster@{}", self.server.domain)
    }
}

/// When the retention sweeper runs (the rules themselves are the policy's `[[retention]]`).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RetentionSection {
    /// Time between sweeps, in milliseconds (an hour); 0: only `sealpost retention run`.
    pub(crate) sweep_interval_ms: u64,
}

impl Default for RetentionSection {
    fn default() -> Self {
        Self {
            sweep_interval_ms: 3600 * 1000,
        }
    }
}

/// Backups: to whom they are encrypted, and the scheduled ones.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct BackupSection {
    /// The age recipient (`age1…`) backups are encrypted to; `sealpost init` makes the
    /// identity (`keys/backup.key`), which belongs off this machine.
    pub(crate) recipient: String,
    /// Where scheduled backups go, relative to the data folder unless absolute.
    pub(crate) folder: PathBuf,
    /// Time between scheduled backups, in milliseconds (a day); 0: none.
    pub(crate) interval_ms: u64,
    /// Scheduled backups kept; older ones are removed.
    pub(crate) keep: u32,
}

impl Default for BackupSection {
    fn default() -> Self {
        Self {
            recipient: String::new(),
            folder: PathBuf::from("backups"),
            interval_ms: 24 * 3600 * 1000,
            keep: 7,
        }
    }
}

/// The web application.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct WebSection {
    /// A logo for every page (PNG, JPEG or SVG, at most 256 KiB), relative to the data folder;
    /// empty: none. The organisation's name is `[outbound] organisation`.
    pub(crate) logo: String,
    /// Networks that may read `/metrics` (`127.0.0.1`, `10.0.0.0/8`, `::1`); empty: nobody.
    pub(crate) metrics_from: Vec<String>,
}

impl Default for WebSection {
    fn default() -> Self {
        Self {
            logo: String::new(),
            metrics_from: vec!["127.0.0.1".into(), "::1".into()],
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ServerSection {
    /// The organisation's primary mail domain.
    pub(crate) domain: String,
    /// The host name clients connect to; the certificate is made for it.
    pub(crate) hostname: String,
    /// The address every listener binds.
    pub(crate) listen_host: IpAddr,
}

/// Paths, relative to the folder of the configuration file unless absolute.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct PathsSection {
    pub(crate) store: PathBuf,
    pub(crate) master_key: PathBuf,
    pub(crate) tls_certificate: PathBuf,
    pub(crate) tls_private_key: PathBuf,
}

impl Default for PathsSection {
    fn default() -> Self {
        Self {
            store: PathBuf::from("store"),
            master_key: PathBuf::from("keys/master.key"),
            tls_certificate: PathBuf::from("tls/cert.pem"),
            tls_private_key: PathBuf::from("tls/key.pem"),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListenersSection {
    pub(crate) imap: u16,
    pub(crate) imaps: u16,
    pub(crate) smtp: u16,
    pub(crate) submission: u16,
    pub(crate) submissions: u16,
    pub(crate) https: u16,
}

impl ListenersSection {
    /// The standard ports, each moved up by `base` (`--port-base`).
    pub(crate) fn with_base(base: u16) -> anyhow::Result<Self> {
        let port = |standard: u16| {
            base.checked_add(standard)
                .with_context(|| format!("--port-base {base} puts port {standard} past 65535"))
        };
        Ok(Self {
            imap: port(143)?,
            imaps: port(993)?,
            smtp: port(25)?,
            submission: port(587)?,
            submissions: port(465)?,
            https: port(443)?,
        })
    }

    pub(crate) fn named(&self) -> [(&'static str, u16); 6] {
        [
            ("imap", self.imap),
            ("imaps", self.imaps),
            ("smtp", self.smtp),
            ("submission", self.submission),
            ("submissions", self.submissions),
            ("https", self.https),
        ]
    }
}

/// Bounds of the store and the web, each named with its unit. Any left out keep their
/// defaults. IMAP's and SMTP's are in `[imap]` and `[smtp]`, the lockout's in `[auth]`; their
/// old keys here are still read (`MOVED_LIMITS`).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct LimitsSection {
    pub(crate) message_bytes_max: u64,
    pub(crate) mailboxes_per_account_max: u32,
    pub(crate) mailbox_name_bytes_max: usize,
    /// Connections one client address may hold open on the HTTPS listener.
    pub(crate) web_connections_per_address_max: usize,
    /// Connections the HTTPS listener holds open at once; past it, `503`.
    pub(crate) web_connections_max: usize,
    /// A TLS handshake (implicit TLS, or after STARTTLS) not finished within this long is
    /// dropped, in milliseconds.
    pub(crate) tls_handshake_ms_max: u64,
    /// A web request's header must arrive whole within this long (also the longest an idle
    /// HTTP/1.1 keep-alive connection waits for its next request), in milliseconds.
    pub(crate) http_header_read_ms_max: u64,
    /// A web connection with no request in progress and no byte moving for this long is
    /// closed, in milliseconds.
    pub(crate) http_idle_ms_max: u64,
    /// Sign-ins (IMAP, SMTP, web) that may wait for a password hash behind the
    /// `PASSWORD_HASH_WORKERS` computing one; past it a sign-in is refused at once.
    pub(crate) password_hash_queue_max: usize,
}

impl Default for LimitsSection {
    fn default() -> Self {
        let store = sealpost_storage::StoreLimits::default();
        let web = sealpost_webmail::HttpLimits::default();
        Self {
            message_bytes_max: store.message_bytes_max,
            mailboxes_per_account_max: store.mailboxes_per_account_max,
            mailbox_name_bytes_max: store.mailbox_name_bytes_max,
            // Browsers open six or so per site; a clinic behind one NAT address has many.
            web_connections_per_address_max: 200,
            web_connections_max: 2_000,
            tls_handshake_ms_max: 10_000,
            http_header_read_ms_max: web.header_read_ms_max,
            http_idle_ms_max: web.idle_ms_max,
            password_hash_queue_max: sealpost_auth::PASSWORD_HASH_QUEUE_MAX,
        }
    }
}

/// `[limits]` keys of earlier versions and where they live now (`section`, `key`); a file
/// that has them is read as if they were there, and the server says so at start.
const MOVED_LIMITS: &[(&str, &[(&str, &str)])] = &[
    ("imap_line_bytes_max", &[("imap", "line_bytes_max")]),
    ("imap_idle_timeout_ms", &[("imap", "idle_timeout_ms")]),
    (
        "imap_commands_per_second_max",
        &[("imap", "commands_per_second_max")],
    ),
    (
        "imap_commands_paced_ms_max",
        &[("imap", "commands_paced_ms_max")],
    ),
    (
        "imap_login_failures_per_connection_max",
        &[("imap", "login_failures_per_connection_max")],
    ),
    (
        "imap_sessions_per_account_max",
        &[("imap", "sessions_per_account_max")],
    ),
    (
        "imap_connections_per_address_max",
        &[("imap", "connections_per_address_max")],
    ),
    ("imap_connections_max", &[("imap", "connections_max")]),
    (
        "prelogin_literal_bytes_max",
        &[("imap", "prelogin_literal_bytes_max")],
    ),
    (
        "prelogin_idle_ms_max",
        &[
            ("imap", "prelogin_idle_ms_max"),
            ("smtp", "prelogin_idle_ms_max"),
        ],
    ),
    (
        "smtp_connections_per_address_max",
        &[("smtp", "connections_per_address_max")],
    ),
    ("smtp_connections_max", &[("smtp", "connections_max")]),
    (
        "smtp_recipients_per_message_max",
        &[("smtp", "recipients_per_message_max")],
    ),
    ("smtp_line_bytes_max", &[("smtp", "line_bytes_max")]),
    (
        "smtp_errors_per_session_max",
        &[("smtp", "errors_per_session_max")],
    ),
    (
        "smtp_messages_per_hour_per_account_max",
        &[("smtp", "messages_per_hour_per_account_max")],
    ),
    ("smtp_command_timeout_ms", &[("smtp", "command_timeout_ms")]),
    (
        "smtp_auth_failures_per_connection_max",
        &[("smtp", "auth_failures_per_connection_max")],
    ),
    (
        "login_failures_per_address_max",
        &[("auth", "failures_per_address_max")],
    ),
    (
        "login_failures_per_account_max",
        &[("auth", "failures_per_account_max")],
    ),
    ("login_failure_window_ms", &[("auth", "failure_window_ms")]),
];

/// Moves the `[limits]` keys of earlier versions to where they live now. Returns a line for
/// each key moved, for the log; a key given both ways is an error naming both.
fn carry_over_limits(file: &mut toml::Table) -> anyhow::Result<Vec<String>> {
    let mut moved = Vec::new();
    let Some(limits) = file.get_mut("limits").and_then(toml::Value::as_table_mut) else {
        return Ok(moved);
    };
    let mut taken = Vec::new();
    for (old, places) in MOVED_LIMITS {
        if let Some(value) = limits.remove(*old) {
            taken.push((*old, *places, value));
        }
    }
    for (old, places, value) in taken {
        for (section, key) in places {
            let table = file
                .entry(section.to_string())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            let Some(table) = table.as_table_mut() else {
                bail!("{section}: is not a table");
            };
            if table.contains_key(*key) {
                bail!("limits.{old} and {section}.{key} are the same setting: keep {section}.{key} only");
            }
            table.insert(key.to_string(), value.clone());
            moved.push(format!(
                "[limits] {old} is read as [{section}] {key}: move it there"
            ));
        }
    }
    Ok(moved)
}

/// A loaded configuration and the folder its relative paths start from.
#[derive(Clone, Debug)]
pub(crate) struct Loaded {
    pub(crate) config: Config,
    pub(crate) file: PathBuf,
    base: PathBuf,
    /// Keys of earlier versions read where they live now, one line each for the log.
    pub(crate) moved: Vec<String>,
}

impl Loaded {
    /// Reads `DIR/sealpost.toml`.
    pub(crate) fn from_data_dir(dir: &Path) -> anyhow::Result<Self> {
        Self::from_file(&dir.join(CONFIG_FILE))
    }

    pub(crate) fn from_file(file: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(file).with_context(|| {
            format!(
                "cannot read {}: is this a Sealpost data folder? (`sealpost init` makes one)",
                file.display()
            )
        })?;
        let (config, moved) =
            parse(&text).map_err(|e| anyhow::anyhow!("{}: {e:#}", file.display()))?;
        validate(&config).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
        let base = file.parent().map(Path::to_path_buf).unwrap_or_default();
        Ok(Self {
            config,
            file: file.to_path_buf(),
            base,
            moved,
        })
    }

    pub(crate) fn path(&self, relative: &Path) -> PathBuf {
        self.base.join(relative)
    }

    pub(crate) fn store_config(&self) -> sealpost_storage::StoreConfig {
        let mut store = sealpost_storage::StoreConfig::new(
            self.path(&self.config.paths.store),
            &self.config.server.domain,
        );
        store.limits.message_bytes_max = self.config.limits.message_bytes_max;
        store.limits.mailboxes_per_account_max = self.config.limits.mailboxes_per_account_max;
        store.limits.mailbox_name_bytes_max = self.config.limits.mailbox_name_bytes_max;
        store
    }

    pub(crate) fn master_key_path(&self) -> PathBuf {
        self.path(&self.config.paths.master_key)
    }
}

/// The configuration in `text`, with the keys of earlier versions moved (and the lines that
/// say so). A file without them is parsed straight from the text, so that an error names its
/// line.
fn parse(text: &str) -> anyhow::Result<(Config, Vec<String>)> {
    let mut table: toml::Table = toml::from_str(text)?;
    let moved = carry_over_limits(&mut table)?;
    if moved.is_empty() {
        return Ok((toml::from_str(text)?, moved));
    }
    Ok((Config::deserialize(toml::Value::Table(table))?, moved))
}

/// `[policy]` as written to sealpost.toml: without `sign_in` and `portal`, which version 0
/// takes from `[auth]` and `[outbound]`.
fn without_console_settings<S: serde::Serializer>(
    policy: &sealpost_policy::PolicyConfig,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    let mut value = toml::Value::try_from(policy).map_err(serde::ser::Error::custom)?;
    if let Some(table) = value.as_table_mut() {
        table.remove("sign_in");
        table.remove("portal");
    }
    value.serialize(serializer)
}

fn validate(config: &Config) -> anyhow::Result<()> {
    if config.policy.sign_in != sealpost_policy::SignInSettings::default()
        || config.policy.portal != sealpost_policy::PortalSettings::default()
    {
        bail!(
            "[policy.sign_in] and [policy.portal] are not read from this file: set sign-in settings \
             in [auth], the pickup link lifetime in [outbound] pickup_ttl_ms \
             (or save a policy version in the console or with sealpost policy set)"
        );
    }
    let domain = &config.server.domain;
    if domain.is_empty()
        || !domain.contains('.') && domain != "localhost"
        || domain.contains(char::is_whitespace)
    {
        bail!("server.domain: {domain:?} is not a domain name");
    }
    if config.server.hostname.is_empty() || config.server.hostname.contains(char::is_whitespace) {
        bail!(
            "server.hostname: {:?} is not a host name",
            config.server.hostname
        );
    }
    let ports = config.listeners.named();
    for (name, port) in ports {
        if port == 0 {
            bail!("listeners.{name}: port 0 is not allowed");
        }
        if let Some((other, _)) = ports.iter().find(|(n, p)| *p == port && *n != name) {
            bail!("listeners.{name}: port {port} is also given to listeners.{other}");
        }
    }
    config.imap.check().map_err(|e| e.in_section("imap"))?;
    config.smtp.check().map_err(|e| e.in_section("smtp"))?;
    config
        .outbound
        .check()
        .map_err(|e| e.in_section("outbound"))?;
    config.auth.check().map_err(|e| e.in_section("auth"))?;
    let limits = &config.limits;
    if limits.message_bytes_max < 1024 {
        bail!(
            "limits.message_bytes_max: {} is below 1024 bytes",
            limits.message_bytes_max
        );
    }
    for (alias, targets) in &config.aliases {
        if !alias.contains('@') || targets.is_empty() || targets.iter().any(|t| !t.contains('@')) {
            bail!("aliases.{alias:?}: an alias is an address with a list of one or more account addresses");
        }
    }
    if limits.web_connections_max == 0 || limits.web_connections_per_address_max == 0 {
        bail!("limits: web_connections_max and web_connections_per_address_max must be at least 1");
    }
    for (name, value) in [
        ("tls_handshake_ms_max", limits.tls_handshake_ms_max),
        ("http_header_read_ms_max", limits.http_header_read_ms_max),
        ("http_idle_ms_max", limits.http_idle_ms_max),
    ] {
        if value < 100 {
            bail!("limits.{name}: {value} is below 100 milliseconds");
        }
    }
    if limits.mailboxes_per_account_max < 7 {
        bail!("limits.mailboxes_per_account_max: must be at least 7 (the default mailboxes)");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> String {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join(CONFIG_FILE);
        std::fs::write(&file, text).unwrap();
        match Loaded::from_file(&file) {
            Ok(_) => "ok".to_string(),
            Err(e) => format!("{e:#}").replace(&file.display().to_string(), "FILE"),
        }
    }

    const GOOD: &str = r#"
[server]
domain = "clinic.example"
hostname = "mail.clinic.example"
listen_host = "127.0.0.1"
[listeners]
imap = 143
imaps = 993
smtp = 25
submission = 587
submissions = 465
https = 443
"#;

    #[test]
    fn config_errors_name_the_file_and_the_key() {
        assert_eq!(parse(GOOD), "ok");
        let check = |from: &str, to: &str, expect: &str| {
            let got = parse(&GOOD.replace(from, to));
            assert!(got.starts_with("FILE: "), "{got}");
            assert!(got.contains(expect), "expected {expect:?} in {got}");
        };
        check(
            "imap = 143",
            "imap = 993",
            "listeners.imap: port 993 is also given to listeners.imaps",
        );
        check("smtp = 25", "smtp = 0", "listeners.smtp: port 0");
        check("smtp = 25", "smtp = 70000", "smtp");
        check(
            "domain = \"clinic.example\"",
            "domain = \"nodot\"",
            "server.domain",
        );
        check(
            "listen_host = \"127.0.0.1\"",
            "listen_host = \"here\"",
            "listen_host",
        );
        check(
            "https = 443",
            "https = 443\nhttp = 80",
            "unknown field `http`",
        );
        check(
            "https = 443",
            "https = 443\n[limits]\nmessage_bytes_max = 10",
            "limits.message_bytes_max",
        );
        check(
            "https = 443",
            "https = 443\n[limits]\ntls_handshake_ms_max = 0",
            "limits.tls_handshake_ms_max: 0 is below 100 milliseconds",
        );
        check(
            "https = 443",
            "https = 443\n[limits]\nweb_connections_max = 0",
            "web_connections_max and web_connections_per_address_max must be at least 1",
        );
        // Each crate's section is its own config type, with its own checks.
        check(
            "https = 443",
            "https = 443\n[imap]\nline_bytes_max = 10",
            "imap.line_bytes_max: 10 is below 1024",
        );
        check(
            "https = 443",
            "https = 443\n[smtp]\nline_bytes_max = 100",
            "smtp.line_bytes_max: 100 is below 512",
        );
        check(
            "https = 443",
            "https = 443\n[imap]\nline_byte_max = 2000",
            "unknown field `line_byte_max`",
        );
        check(
            "https = 443",
            "https = 443\n[outbound]\nsmarthost = \"relay.example\"",
            "\"relay.example\" is not host:port",
        );
        check(
            "https = 443",
            "https = 443\n[outbound]\nsmarthost = \" \"",
            "\" \" is not host:port",
        );
        check(
            "https = 443",
            "https = 443\n[imap]\nquota_bytes = 1",
            "unknown field `quota_bytes`",
        );
        check(
            "https = 443",
            "https = 443\n[auth]\nfailures_per_account_max = 0",
            "auth.failures_per_account_max = 0 is outside 1..=10000",
        );
        // The [limits] keys of earlier versions are still read, where they live now; given
        // both ways, the file is refused.
        check(
            "https = 443",
            "https = 443\n[limits]\nimap_line_bytes_max = 10",
            "imap.line_bytes_max: 10 is below 1024",
        );
        check(
            "https = 443",
            "https = 443\n[limits]\nsmtp_line_bytes_max = 600\n[smtp]\nline_bytes_max = 700",
            "limits.smtp_line_bytes_max and smtp.line_bytes_max are the same setting",
        );
    }

    #[test]
    fn the_limits_keys_of_earlier_versions_are_read_where_they_live_now() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join(CONFIG_FILE);
        let old = "\n[limits]\nimap_connections_max = 7\nprelogin_idle_ms_max = 1500\n\
                   login_failures_per_account_max = 4\nsmtp_line_bytes_max = 1000\n\
                   message_bytes_max = 2000000\n";
        std::fs::write(&file, format!("{GOOD}{old}")).unwrap();
        let loaded = Loaded::from_file(&file).unwrap();
        let config = &loaded.config;
        assert_eq!(config.imap.connections_max, 7);
        assert_eq!(config.imap.prelogin_idle_ms_max, 1500);
        assert_eq!(config.smtp.prelogin_idle_ms_max, 1500);
        assert_eq!(config.auth.failures_per_account_max, 4);
        assert_eq!(config.smtp.line_bytes_max, 1000);
        assert_eq!(
            config.limits.message_bytes_max, 2_000_000,
            "still a [limits] key"
        );
        assert_eq!(loaded.moved.len(), 5, "{:?}", loaded.moved);
        assert!(loaded.moved.contains(
            &"[limits] imap_connections_max is read as [imap] connections_max: move it there"
                .to_string()
        ));
        // What `init` writes today has none of them.
        let written = toml::to_string(config).unwrap();
        assert!(!written.contains("imap_connections_max"), "{written}");
        std::fs::write(&file, written).unwrap();
        let again = Loaded::from_file(&file).unwrap();
        assert!(again.moved.is_empty());
        assert_eq!(again.config.imap.connections_max, 7);
    }
}
