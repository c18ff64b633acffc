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
    #[serde(default)]
    pub(crate) smtp: SmtpSection,
    #[serde(default)]
    pub(crate) outbound: OutboundSection,
    /// Who must show what to sign in: a second factor for everyone (then mail clients use
    /// app passwords), passkeys for staff.
    #[serde(default)]
    pub(crate) auth: sealpost_auth::AuthPolicy,
    #[serde(default)]
    pub(crate) web: WebSection,
    /// Admin rules per domain or address, content rules, barred accounts, retention rules:
    /// version 0 of the policy. Its sign-in and portal settings come from `[auth]`,
    /// `[limits]` and `[outbound]` here (so they are not written under `[policy]`).
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

/// Delivery to other servers.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct OutboundSection {
    /// The port receiving servers listen on.
    pub(crate) port: u16,
    /// PEM files of the certificate authorities a receiving server's certificate may chain
    /// to: the system's bundle, plus any a site adds for its partners' private CAs.
    pub(crate) ca_files: Vec<PathBuf>,
    /// The first retry after a temporary failure, in ms; each next one waits twice as long.
    pub(crate) retry_first_ms: u64,
    /// The longest wait between two attempts, in ms.
    pub(crate) retry_max_ms: u64,
    /// How long a message may wait for delivery before it fails and bounces, in ms.
    pub(crate) retry_window_ms: u64,
    /// The organisation's name in pickup notices (default: the primary domain).
    pub(crate) organisation: String,
    /// The subject of pickup notices; no patient information belongs here.
    pub(crate) notice_subject: String,
    /// How long a pickup link works, in ms.
    pub(crate) pickup_ttl_ms: u64,
    /// Relay all outside mail through this host (`"relay.example:587"`), verified TLS only;
    /// empty: deliver to each recipient's MX.
    pub(crate) smarthost: String,
    /// Connections open at once to one recipient domain (or the smarthost).
    pub(crate) connections_per_domain_max: usize,
    /// The HTTPS port MTA-STS policies are fetched from.
    pub(crate) mta_sts_port: u16,
    /// Honour DANE TLSA records: takes effect when `[smtp] dns_servers` (or the system's
    /// resolvers) are on this machine and validate DNSSEC, as a local unbound does.
    pub(crate) dane: bool,
}

impl Default for OutboundSection {
    fn default() -> Self {
        let defaults = sealpost_smtp::OutboundConfig::default();
        Self {
            port: defaults.port,
            ca_files: vec![PathBuf::from("/etc/ssl/certs/ca-certificates.crt")],
            retry_first_ms: defaults.retry_first_ms,
            retry_max_ms: defaults.retry_max_ms,
            retry_window_ms: defaults.retry_window_ms,
            organisation: String::new(),
            notice_subject: defaults.notice_subject,
            pickup_ttl_ms: defaults.pickup_ttl_ms,
            smarthost: String::new(),
            connections_per_domain_max: defaults.connections_per_domain_max,
            mta_sts_port: defaults.mta_sts_port,
            dane: defaults.dane,
        }
    }
}

/// Inbound mail checks.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct SmtpSection {
    /// DNS servers for SPF, DKIM and DMARC lookups (`"192.0.2.53:53"`); empty: the system's
    /// (/etc/resolv.conf).
    pub(crate) dns_servers: Vec<std::net::SocketAddr>,
    /// Refuse inbound mail that fails DMARC when its domain publishes p=reject.
    pub(crate) reject_dmarc_reject: bool,
}

impl Default for SmtpSection {
    fn default() -> Self {
        Self {
            dns_servers: Vec::new(),
            reject_dmarc_reject: true,
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

/// Bounds, each named with its unit. Any left out keep their defaults.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct LimitsSection {
    pub(crate) message_bytes_max: u64,
    pub(crate) mailboxes_per_account_max: u32,
    pub(crate) mailbox_name_bytes_max: usize,
    /// Connections one client address may hold open on one IMAP listener.
    pub(crate) imap_connections_per_address_max: usize,
    /// Longest IMAP command line, in bytes.
    pub(crate) imap_line_bytes_max: usize,
    /// An IMAP session silent this long is closed.
    pub(crate) imap_idle_timeout_ms: u64,
    /// IMAP commands a session may send per second; past it the session is paced.
    pub(crate) imap_commands_per_second_max: u32,
    /// A session paced this long in a row gets NO [LIMIT] past the rate, in milliseconds.
    pub(crate) imap_commands_paced_ms_max: u64,
    /// Failed logins on one connection before it is closed.
    pub(crate) imap_login_failures_per_connection_max: u32,
    /// IMAP sessions one account may have open at once.
    pub(crate) imap_sessions_per_account_max: usize,
    /// Failed logins from one address (within 15 minutes) before it is locked out.
    pub(crate) login_failures_per_address_max: u32,
    /// Failed logins for one account (within 15 minutes) before it is locked out.
    pub(crate) login_failures_per_account_max: u32,
    /// How long failures are remembered and a lockout lasts, in milliseconds (15 minutes).
    pub(crate) login_failure_window_ms: u64,
    /// Connections one client address may hold open on one SMTP listener.
    pub(crate) smtp_connections_per_address_max: usize,
    /// Recipients one message may have.
    pub(crate) smtp_recipients_per_message_max: usize,
    /// Longest SMTP command line, in bytes.
    pub(crate) smtp_line_bytes_max: usize,
    /// Error replies one SMTP session may cause before it is closed.
    pub(crate) smtp_errors_per_session_max: u32,
    /// Messages one account may submit per hour.
    pub(crate) smtp_messages_per_hour_per_account_max: u32,
    /// An SMTP client silent this long is disconnected, in milliseconds.
    pub(crate) smtp_command_timeout_ms: u64,
    /// Failed AUTH attempts on one SMTP connection before it is closed.
    pub(crate) smtp_auth_failures_per_connection_max: u32,
    /// Connections one client address may hold open on the HTTPS listener.
    pub(crate) web_connections_per_address_max: usize,
    /// Connections each IMAP listener holds open at once, from everyone; past it a client is
    /// told `* BYE [UNAVAILABLE]` and closed.
    pub(crate) imap_connections_max: usize,
    /// Connections each SMTP listener holds open at once; past it, `421 4.7.0`.
    pub(crate) smtp_connections_max: usize,
    /// Connections the HTTPS listener holds open at once; past it, `503`.
    pub(crate) web_connections_max: usize,
    /// A TLS handshake (implicit TLS, or after STARTTLS) not finished within this long is
    /// dropped, in milliseconds.
    pub(crate) tls_handshake_ms_max: u64,
    /// Before an IMAP login, or an SMTP AUTH or MAIL, each command must arrive whole within
    /// this long, or the connection is closed, in milliseconds.
    pub(crate) prelogin_idle_ms_max: u64,
    /// Largest IMAP literal before login, in bytes.
    pub(crate) prelogin_literal_bytes_max: u64,
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
        let imap = sealpost_imap::ImapConfig::default();
        let login = sealpost_imap::LoginLimits::default();
        let smtp = sealpost_smtp::SmtpConfig::default();
        let web = sealpost_webmail::HttpLimits::default();
        Self {
            message_bytes_max: store.message_bytes_max,
            mailboxes_per_account_max: store.mailboxes_per_account_max,
            mailbox_name_bytes_max: store.mailbox_name_bytes_max,
            // A clinic behind one NAT address runs many clients, each with several connections.
            imap_connections_per_address_max: 200,
            imap_line_bytes_max: imap.line_bytes_max,
            imap_idle_timeout_ms: imap.idle_timeout_ms,
            imap_commands_per_second_max: imap.commands_per_second_max,
            imap_commands_paced_ms_max: imap.commands_paced_ms_max,
            imap_login_failures_per_connection_max: imap.login_failures_per_connection_max,
            imap_sessions_per_account_max: login.sessions_per_account_max,
            login_failures_per_address_max: login.failures_per_address_max,
            login_failures_per_account_max: login.failures_per_account_max,
            login_failure_window_ms: login.failure_window_ms,
            smtp_connections_per_address_max: 50,
            smtp_recipients_per_message_max: smtp.recipients_per_message_max,
            smtp_line_bytes_max: smtp.line_bytes_max,
            smtp_errors_per_session_max: smtp.errors_per_session_max,
            smtp_messages_per_hour_per_account_max: smtp.messages_per_hour_per_account_max,
            smtp_command_timeout_ms: smtp.command_timeout_ms,
            smtp_auth_failures_per_connection_max: smtp.auth_failures_per_connection_max,
            // Browsers open six or so per site; a clinic behind one NAT address has many.
            web_connections_per_address_max: 200,
            // An idle IMAP session holds about 17 KiB: 5,000 on a listener is ~85 MiB.
            imap_connections_max: 5_000,
            smtp_connections_max: 1_000,
            web_connections_max: 2_000,
            tls_handshake_ms_max: 10_000,
            prelogin_idle_ms_max: imap.prelogin_idle_ms_max,
            prelogin_literal_bytes_max: imap.prelogin_literal_bytes_max,
            http_header_read_ms_max: web.header_read_ms_max,
            http_idle_ms_max: web.idle_ms_max,
            password_hash_queue_max: sealpost_auth::PASSWORD_HASH_QUEUE_MAX,
        }
    }
}

/// A loaded configuration and the folder its relative paths start from.
#[derive(Clone, Debug)]
pub(crate) struct Loaded {
    pub(crate) config: Config,
    pub(crate) file: PathBuf,
    base: PathBuf,
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
        let config: Config =
            toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {}", file.display(), e))?;
        validate(&config).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
        let base = file.parent().map(Path::to_path_buf).unwrap_or_default();
        Ok(Self {
            config,
            file: file.to_path_buf(),
            base,
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

/// `[policy]` as written to sealpost.toml: without `sign_in` and `portal`, which version 0
/// takes from `[auth]`, `[limits]` and `[outbound]`.
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
            "[policy.sign_in] and [policy.portal] are not read from this file: set second factors in [auth], \
             lockout counters in [limits], the pickup link lifetime in [outbound] pickup_ttl_ms \
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
    let limits = &config.limits;
    if limits.message_bytes_max < 1024 {
        bail!(
            "limits.message_bytes_max: {} is below 1024 bytes",
            limits.message_bytes_max
        );
    }
    if limits.imap_line_bytes_max < 1024 {
        bail!(
            "limits.imap_line_bytes_max: {} is below 1024 bytes",
            limits.imap_line_bytes_max
        );
    }
    if limits.imap_idle_timeout_ms < 60_000 {
        bail!(
            "limits.imap_idle_timeout_ms: {} is below one minute",
            limits.imap_idle_timeout_ms
        );
    }
    if limits.imap_connections_per_address_max == 0 || limits.imap_commands_per_second_max == 0 {
        bail!("limits: imap_connections_per_address_max and imap_commands_per_second_max must be at least 1");
    }
    if limits.smtp_line_bytes_max < 512 {
        bail!(
            "limits.smtp_line_bytes_max: {} is below the 512 bytes RFC 5321 requires",
            limits.smtp_line_bytes_max
        );
    }
    if limits.smtp_connections_per_address_max == 0
        || limits.smtp_recipients_per_message_max == 0
        || limits.smtp_errors_per_session_max == 0
        || limits.smtp_auth_failures_per_connection_max == 0
    {
        bail!(
            "limits: smtp_connections_per_address_max, smtp_recipients_per_message_max, \
             smtp_errors_per_session_max and smtp_auth_failures_per_connection_max must be at least 1"
        );
    }
    if limits.smtp_command_timeout_ms < 10_000 {
        bail!(
            "limits.smtp_command_timeout_ms: {} is below ten seconds",
            limits.smtp_command_timeout_ms
        );
    }
    if config.outbound.connections_per_domain_max == 0 {
        bail!("outbound.connections_per_domain_max: must be at least 1");
    }
    if !config.outbound.smarthost.is_empty() {
        let port = config
            .outbound
            .smarthost
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse::<u16>().ok());
        if port.is_none_or(|p| p == 0) {
            bail!(
                "outbound.smarthost: {:?} is not host:port",
                config.outbound.smarthost
            );
        }
    }
    for (alias, targets) in &config.aliases {
        if !alias.contains('@') || targets.is_empty() || targets.iter().any(|t| !t.contains('@')) {
            bail!("aliases.{alias:?}: an alias is an address with a list of one or more account addresses");
        }
    }
    if limits.imap_connections_max == 0
        || limits.smtp_connections_max == 0
        || limits.web_connections_max == 0
    {
        bail!("limits: imap_connections_max, smtp_connections_max and web_connections_max must be at least 1");
    }
    for (name, value) in [
        ("tls_handshake_ms_max", limits.tls_handshake_ms_max),
        ("prelogin_idle_ms_max", limits.prelogin_idle_ms_max),
        ("http_header_read_ms_max", limits.http_header_read_ms_max),
        ("http_idle_ms_max", limits.http_idle_ms_max),
    ] {
        if value < 100 {
            bail!("limits.{name}: {value} is below 100 milliseconds");
        }
    }
    if limits.prelogin_literal_bytes_max < 1024 {
        bail!(
            "limits.prelogin_literal_bytes_max: {} is below 1024 bytes (a LOGIN with literals needs a few hundred)",
            limits.prelogin_literal_bytes_max
        );
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
            "web_connections_max must be at least 1",
        );
    }
}
