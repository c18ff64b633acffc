//! `sealpost init` and `sealpost demo`.

use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::process::ExitCode;

use anyhow::{bail, Context};
use sealpost_storage::{Actor, MasterKey, NewAccount, Role, Store};

use crate::config::{self, Config, ListenersSection, Loaded, PathsSection, ServerSection};

#[derive(clap::Args)]
pub(crate) struct InitArgs {
    /// The organisation's primary mail domain.
    #[arg(long)]
    pub(crate) domain: String,
    /// The address the listeners bind.
    #[arg(long, default_value = "127.0.0.1")]
    pub(crate) listen_host: IpAddr,
    /// Move every listener up by N: IMAP N+143, IMAPS N+993, SMTP N+25, submission N+587,
    /// submissions N+465, HTTPS N+443. Without it, the standard ports.
    #[arg(long, default_value_t = 0)]
    pub(crate) port_base: u16,
    /// The host name clients use; the self-signed certificate names it. Default: mail.DOMAIN.
    #[arg(long)]
    pub(crate) hostname: Option<String>,
}

#[derive(clap::Args)]
pub(crate) struct DemoArgs {
    /// Port base for the demo (IMAP on N+143 and so on).
    #[arg(long, default_value_t = 10000)]
    pub(crate) port_base: u16,
}

/// The backup identity's file, beside the master key.
pub(crate) const BACKUP_KEY_FILE: &str = "backup.key";

/// What `init` made, for the caller to print.
pub(crate) struct Initialised {
    pub(crate) loaded: Loaded,
    pub(crate) store: Store,
}

pub(crate) fn run_init(args: &InitArgs, data: &Path) -> anyhow::Result<Initialised> {
    let done = init(args, data)?;
    let cfg = &done.loaded.config;
    println!("Made a Sealpost data folder at {}", data.display());
    println!("  configuration  {}", done.loaded.file.display());
    println!(
        "  master key     {}  (mode 0600; keep a copy offline: without it the store is lost)",
        done.loaded.master_key_path().display()
    );
    println!(
        "  certificate    {}  (self-signed for {})",
        done.loaded.path(&cfg.paths.tls_certificate).display(),
        cfg.server.hostname
    );
    println!(
        "  store          {}",
        done.loaded.path(&cfg.paths.store).display()
    );
    println!(
        "  backup key     {}  (decrypts backups: move it OFF this machine, then delete it here)",
        done.loaded
            .master_key_path()
            .with_file_name(BACKUP_KEY_FILE)
            .display()
    );
    println!(
        "Next: sealpost account add USER@{} --data {}",
        cfg.server.domain,
        data.display()
    );
    Ok(done)
}

fn init(args: &InitArgs, data: &Path) -> anyhow::Result<Initialised> {
    let config_file = data.join(config::CONFIG_FILE);
    if config_file.exists() {
        bail!(
            "{} exists already: this folder holds a Sealpost configuration",
            config_file.display()
        );
    }
    let domain = args.domain.trim().to_ascii_lowercase();
    let hostname = args
        .hostname
        .clone()
        .unwrap_or_else(|| format!("mail.{domain}"));
    let config = Config {
        server: ServerSection {
            domain,
            hostname,
            listen_host: args.listen_host,
        },
        paths: PathsSection::default(),
        listeners: ListenersSection::with_base(args.port_base)?,
        limits: Default::default(),
        aliases: Default::default(),
        imap: Default::default(),
        smtp: Default::default(),
        outbound: Default::default(),
        policy: Default::default(),
        auth: Default::default(),
        web: Default::default(),
        backup: Default::default(),
        retention: Default::default(),
        acme: Default::default(),
        spam: Default::default(),
    };
    let backup_identity = age::x25519::Identity::generate();
    let mut config = config;
    config.backup.recipient = backup_identity.to_public().to_string();
    let text = toml::to_string(&config).context("writing the configuration")?;
    create_dir(data, 0o750)?;
    // Validate through the same path `serve` uses before anything secret is made.
    let probe = data.join(".sealpost.toml.new");
    std::fs::write(&probe, &text).with_context(|| format!("writing {}", probe.display()))?;
    let loaded = Loaded::from_file(&probe);
    let _ = std::fs::remove_file(&probe);
    let loaded = loaded?;

    let master_path = loaded.master_key_path();
    let master = MasterKey::create_file(&master_path)?;
    {
        use age::secrecy::ExposeSecret;
        let backup_key = master_path.with_file_name(BACKUP_KEY_FILE);
        let text = format!(
            "# Sealpost backup identity: decrypts this server's backups. Keep it OFF this machine.\n# recipient: {}\n{}\n",
            config.backup.recipient,
            backup_identity.to_string().expose_secret()
        );
        write_new_file(&backup_key, text.as_bytes(), 0o600)?;
    }
    write_certificate(&loaded, &config)?;
    let store = Store::create(loaded.store_config(), master)?;
    crate::dkim::ensure_keys(&store)?;
    write_new_file(&config_file, text.as_bytes(), 0o640)?;
    let loaded = Loaded::from_file(&config_file)?;
    Ok(Initialised { loaded, store })
}

fn write_certificate(loaded: &Loaded, config: &Config) -> anyhow::Result<()> {
    let mut names = vec![
        config.server.hostname.clone(),
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ];
    let listen = config.server.listen_host.to_string();
    if !names.contains(&listen) && !config.server.listen_host.is_unspecified() {
        names.push(listen);
    }
    let mut params = rcgen::CertificateParams::new(names).context("certificate names")?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, config.server.hostname.clone());
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::days(1);
    params.not_after = now + time::Duration::days(825);
    let key = rcgen::KeyPair::generate().context("making the certificate key")?;
    let cert = params
        .self_signed(&key)
        .context("signing the certificate")?;
    let cert_path = loaded.path(&config.paths.tls_certificate);
    let key_path = loaded.path(&config.paths.tls_private_key);
    if let Some(dir) = cert_path.parent() {
        create_dir(dir, 0o750)?;
    }
    write_new_file(&key_path, key.serialize_pem().as_bytes(), 0o600)?;
    write_new_file(&cert_path, cert.pem().as_bytes(), 0o644)?;
    Ok(())
}

fn create_dir(path: &Path, mode: u32) -> anyhow::Result<()> {
    if !path.exists() {
        std::fs::create_dir_all(path).with_context(|| format!("creating {}", path.display()))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .with_context(|| format!("setting the mode of {}", path.display()))?;
    }
    Ok(())
}

fn write_new_file(path: &Path, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing {}", path.display()))
}

/// A random password of 20 characters from an alphabet without look-alikes (~115 bits).
pub(crate) fn generate_password() -> String {
    use rand::seq::SliceRandom;
    const ALPHABET: &[u8] = b"abcdefghijkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    let mut rng = rand::thread_rng();
    (0..20)
        .filter_map(|_| ALPHABET.choose(&mut rng).map(|b| char::from(*b)))
        .collect()
}

pub(crate) fn run_demo(args: &DemoArgs, data: &Path) -> anyhow::Result<ExitCode> {
    let config_file = data.join(config::CONFIG_FILE);
    let credentials = data.join("demo-credentials.txt");
    if !config_file.exists() {
        let init_args = InitArgs {
            domain: "sealpost.test".to_string(),
            listen_host: "127.0.0.1".parse().context("loopback address")?,
            port_base: args.port_base,
            hostname: Some("localhost".to_string()),
        };
        let done = init(&init_args, data)?;
        let password = generate_password();
        let address = format!("demo@{}", done.loaded.config.server.domain);
        let id = done.store.create_account(
            &NewAccount {
                address: &address,
                display_name: "Demo User",
                role: Role::Staff,
                password: Some(&password),
            },
            &Actor::cli(),
        )?;
        // A second factor is required by default: mail clients sign in with an app password.
        let app_password = sealpost_auth::credentials::issue_app_password(
            &done.store,
            id,
            "Demo mail client",
            sealpost_auth::Scope::Both,
            &Actor::cli(),
        )
        .map_err(|why| anyhow::anyhow!("issuing the demo's app password: {why}"))?;
        drop(done.store);
        write_new_file(
            &credentials,
            format!("{address}\n{password}\n{app_password}\n").as_bytes(),
            0o600,
        )?;
    }
    let loaded = Loaded::from_file(&config_file)?;
    let text = std::fs::read_to_string(&credentials)
        .with_context(|| format!("reading {}", credentials.display()))?;
    let mut lines = text.lines();
    let (address, password, app_password) = (
        lines.next().unwrap_or_default(),
        lines.next().unwrap_or_default(),
        lines.next().unwrap_or_default(),
    );
    let cfg = &loaded.config;
    println!("Sealpost demo, data in {}", data.display());
    println!("  log in as      {address}");
    println!(
        "  password       {password} (the web; a second factor is set up at the first sign-in)"
    );
    println!("  app password   {app_password} (Thunderbird, Outlook: IMAP and SMTP)");
    println!(
        "  IMAP           {}:{} (STARTTLS), {}:{} (TLS)",
        cfg.server.hostname, cfg.listeners.imap, cfg.server.hostname, cfg.listeners.imaps
    );
    println!(
        "  SMTP           {}:{} (submission, STARTTLS), {}:{} (TLS); inbound {}:{}",
        cfg.server.hostname,
        cfg.listeners.submission,
        cfg.server.hostname,
        cfg.listeners.submissions,
        cfg.server.hostname,
        cfg.listeners.smtp
    );
    println!(
        "  web            https://{}:{}/ (sign in, account security)",
        cfg.server.hostname, cfg.listeners.https
    );
    println!(
        "  certificate    {} (self-signed: accept it once in the client)",
        loaded.path(&cfg.paths.tls_certificate).display()
    );
    crate::serve::run(data)
}
